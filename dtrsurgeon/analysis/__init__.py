"""Analysis passes: capture the forward as a torch.fx graph, find residual
chains on it, and tie each chain to the module and source lines that hold it.

Each pass takes a graph or a model and returns a small record; none prints or
writes files.
"""
