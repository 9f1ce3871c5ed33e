//! Client for the Imburse REST API.
