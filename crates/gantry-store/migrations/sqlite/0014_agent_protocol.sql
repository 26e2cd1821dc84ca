-- The agent protocol version (`gantry_api::agent::PROTOCOL`) an agent speaks, as it said at
-- registration and says on each job request since; NULL: an agent registered before the server
-- recorded it, that has not asked for a job since.
ALTER TABLE agents ADD COLUMN protocol INTEGER;
