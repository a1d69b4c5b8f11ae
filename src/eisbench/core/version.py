"""The package version: part of every stage cache key, so a release never serves an older
release's results."""

VERSION = "0.1.0"
