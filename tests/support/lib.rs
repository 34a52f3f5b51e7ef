//! Fixtures for the real-container tests.
