"""OPC UA devices for fieldgate (asyncua)."""
