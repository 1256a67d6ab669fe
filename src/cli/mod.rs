//! Command-line interface (clap). (Stub: filled in by the CLI author.)
