"""HTML pages: the report page, retrieval galleries with thumbnails, a query's result page and the search
page of ``cmh serve`` (``search_page``)."""
