"""HTML pages: the report page, retrieval galleries with thumbnails, and a query's result page."""
