"""Data Query: report queries over the analytics store, relative periods, export formats."""
