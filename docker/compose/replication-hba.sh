#!/bin/sh
# The official image allows SQL connections from other containers; pgpitr
# streams over a replication connection, which needs its own line.
set -e
echo "host replication all all scram-sha-256" >> "$PGDATA/pg_hba.conf"
