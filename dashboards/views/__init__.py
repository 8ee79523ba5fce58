"""Dashboard pages: each file is one ``st.Page`` registered by ``dashboards/app.py`` (not named
``pages/``, which Streamlit would also list on its own before ``st.navigation`` runs)."""
