"""The ground floor: registry, config, paths, statistics, progress and tensor primitives."""
