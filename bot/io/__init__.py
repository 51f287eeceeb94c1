"""Bulk import and export (CLI and HTTP): streaming file readers, the import engine, export writers."""
