#!/bin/sh
# Container entrypoint: apply database migrations, then exec ticketbot so it is PID 1 and gets SIGTERM directly
# (`docker stop` then lets it finish storing what it acknowledged; see Runtime.run_forever).
#
#   docker run ticketbot                 -> ticketbot db upgrade && exec ticketbot run
#   docker run ticketbot db upgrade      -> exec ticketbot db upgrade
#   docker run ticketbot tickets list    -> exec ticketbot tickets list
#
# MIGRATE_ON_START=0 skips the upgrade before `run` (when a one-off job, such as compose's `migrate`
# service, has already applied it). `run` itself re-checks the schema under a PostgreSQL advisory lock.
set -eu

if [ "$#" -eq 0 ]; then
    set -- run
fi

if [ "$1" = "run" ] && [ "${MIGRATE_ON_START:-1}" = "1" ]; then
    ticketbot db upgrade
fi

exec ticketbot "$@"
