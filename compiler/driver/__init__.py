"""The one compile driver (graph) and the compiled objects it returns (compiled). Imports everything below it; nothing below imports it."""
