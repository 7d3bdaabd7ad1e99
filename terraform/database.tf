# The database side of the services: one Postgres role per service, the init
# container that gives it its grants, and where each service's credentials come from.
# The role kinds and their grants are defined once, in churnops
# (code/churnops/monitoring/db_roles.py), which terraform/scripts/db_init.py runs.

locals {
  db_roles = {
    # The flow (worker): reads and writes the metrics tables, no DDL.
    flow = { name = "churnops_flow", kind = "writer", database = "metrics", scheme = "postgresql+psycopg2" }
    # Grafana: SELECT on the dashboards' tables only.
    grafana = { name = "grafana_ro", kind = "reader", database = "metrics", scheme = "postgresql+psycopg2" }
    # MLflow and Prefect: each owns its database and migrates it itself.
    # Explicit drivers: SQLAlchemy 2.1 reads a bare postgresql:// as psycopg 3, not installed.
    mlflow  = { name = "mlflow", kind = "owner", database = "mlflow", scheme = "postgresql+psycopg2" }
    prefect = { name = "prefect", kind = "owner", database = "prefect", scheme = "postgresql+asyncpg" }
  }

  # ECS `valueFrom` references to the URL in each role's secret: the URL (with the
  # password) is assembled in Secrets Manager, never in the plan or the state.
  db_url_secrets = {
    metrics = "${module.rds.roles.flow.secret_arn}:url::"
    mlflow  = "${module.rds.roles.mlflow.secret_arn}:url::"
    prefect = "${module.rds.roles.prefect.secret_arn}:url::"
  }

  # The init container of each service's task, in the flow image (it carries
  # churnops): as the RDS master user, migrate what needs it and give the role its
  # password and grants. Idempotent, so it runs at every task start.
  db_init = {
    for key, role in module.rds.roles : key => {
      image   = local.images.orchestration
      command = ["python", "-c", file("${path.module}/scripts/db_init.py")]
      environment = {
        DB_HOST           = module.rds.address
        DB_PORT           = tostring(module.rds.port)
        DB_ADMIN_DATABASE = module.rds.initial_database
        DB_ROLE_KIND      = role.kind
        DB_ROLE_NAME      = role.name
        DB_ROLE_DATABASE  = role.database
        PGSSLMODE         = "require"
      }
      secrets = {
        DB_ADMIN_USER     = "${module.rds.master_secret_arn}:username::"
        DB_ADMIN_PASSWORD = "${module.rds.master_secret_arn}:password::"
        DB_ROLE_PASSWORD  = "${role.secret_arn}:password::"
      }
    }
  }

}
