"""What to read and how: inputs, byte sources, decode and preprocessing."""
