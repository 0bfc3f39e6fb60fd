"""The Data Query web pages the partner API serves: a template builder and a live dashboard.

Everything a page needs ships in this package (``html/`` the pages,
``static/`` their scripts and style sheet) and is served by the API itself:
no CDN, no external font, so the pages work offline and behind a strict
Content-Security-Policy. Charts are drawn by ``static/charts.js``, a small SVG
module of ours (``lineChart``, ``barChart``); ``static/common.js`` holds what
every page shares (the API key kept in the tab's sessionStorage, API calls,
tables, the navigation), so a new page is one HTML file, one script and one
entry in :data:`passerelle.connectors.partner_api.page_routes.PAGES`.

The logic the pages run that is not drawing lives in Python, served as JSON:
the dashboard's queries are :mod:`passerelle.connectors.data_query.dashboard`
(``/pages/dashboard/queries``), so tests and the bench run exactly what the
page runs.
"""
