"""Reading files users hand us without running code from them: the exact op table, bounded readers, .pt2 checks and reader, model and input files."""
