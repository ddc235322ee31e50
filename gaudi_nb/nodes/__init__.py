"""Attached machines: SSH connections (asyncssh), bootstrap, preflight and the store's node records.

Nothing here imports asyncssh until a connection is opened (it is the `ssh` extra).
"""
