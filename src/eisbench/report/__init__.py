"""HTML reports with embedded plots (matplotlib, Agg backend), one module per experiment."""
