"""What a transfer is and what the service refuses: standard library only, the one room of `shared` the engine imports."""
