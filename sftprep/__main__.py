from sftprep.cli import entry

entry()
