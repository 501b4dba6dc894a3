"""Infrastructure every stage uses: project paths, content fingerprints, progress lines, loopback
ports and the one backend-unavailable error.
"""
