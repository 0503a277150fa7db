"""Backbones we ship, written the way their authors wrote them.

They exist so the compiler is tested on real-world code (Python control flow,
shape unpacking, helper functions) and so README commands run with no download.
"""
