"""long_video"""
