"""Shipping to devices: bundle, signing keys, prevalidation, transports (local, SSH), push and fleet."""
