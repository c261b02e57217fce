"""Writing results: the record schema, writer table, Parquet."""
