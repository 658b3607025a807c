//! Tests of the registry client against fake registries served in-process.
