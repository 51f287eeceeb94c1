"""Classification step of the pipeline: department, priority, confidence and summary for a ticket text."""
