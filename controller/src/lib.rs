//! Berth controller engine.
