"""Show: the Streamlit analyst dashboard (reads PostgreSQL)."""
