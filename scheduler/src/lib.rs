//! The scheduler: web page, ATProto OAuth, schedules and delegations; publishes backup jobs to
//! RabbitMQ.
//!
//! Not built yet: the scheduler arrives with its own issue. This crate exists so the workspace
//! has its final shape.
