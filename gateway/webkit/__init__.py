"""What both web apps share (the local UI and the registry's): sessions, CSRF, headers, templates, plots, assets."""
