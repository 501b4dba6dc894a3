"""Where models come from without a hub: a tiny locally built chat model, and real pretrained
models unpacked from a wheel on disk.
"""
