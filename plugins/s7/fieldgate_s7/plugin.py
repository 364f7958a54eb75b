"""The fieldgate plugin: the `s7` protocol (Siemens S7 PLCs over ISO-on-TCP).

The protocol is declared as an entry point (`fieldgate.protocols`, see pyproject.toml), imported when a document
uses it; this module only makes the plugin known (`fieldgate plugins`)."""
