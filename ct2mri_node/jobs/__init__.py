"""Durable job records, the worker that runs them, and the pipeline that joins the stages."""
