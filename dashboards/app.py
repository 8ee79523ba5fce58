"""The fraudray analyst dashboard: ``streamlit run dashboards/app.py`` (``make run`` starts it on
:8501 through :mod:`dashboards.launch`). Every page reads PostgreSQL through
:mod:`dashboards.queries`; the sidebar's time range and refresh controls apply to all of them."""

from __future__ import annotations

import streamlit as st

from dashboards import common

PAGES = (
    st.Page(
        "views/overview.py", title="Overview", icon=":material/monitoring:", url_path="overview", default=True
    ),
    st.Page("views/geography.py", title="Geography", icon=":material/public:", url_path="geography"),
    st.Page(
        "views/risk.py", title="Top-risk users & merchants", icon=":material/person_search:", url_path="risk"
    ),
    st.Page("views/trends.py", title="Trends", icon=":material/trending_up:", url_path="trends"),
    st.Page("views/models.py", title="Models", icon=":material/model_training:", url_path="models"),
    st.Page("views/alerts.py", title="Alerts", icon=":material/notifications_active:", url_path="alerts"),
)

st.set_page_config(page_title="fraudray", page_icon=":material/shield:", layout="wide")
navigation = st.navigation(list(PAGES))
common.sidebar()
navigation.run()
