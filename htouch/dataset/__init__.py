"""The episode format, its reader and writer, validation and the dataset tools."""
