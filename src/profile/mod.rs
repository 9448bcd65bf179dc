//! Profiles: schema, inheritance, validation, secrets.
