"""What every layer uses: the user-error type, files written whole or not at all, file locks, full precision."""
