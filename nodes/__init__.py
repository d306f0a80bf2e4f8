"""The node layer: registers the pack's nodes with ComfyUI (filled as the nodes land)."""
NODE_CLASS_MAPPINGS: dict = {}
NODE_DISPLAY_NAME_MAPPINGS: dict = {}
