"""Pictures of what a trace recorded: matplotlib figures (`plots`) and the README figures (`figures`)."""
