//! Real local test infrastructure.
