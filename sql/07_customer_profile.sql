-- creates: fs_customer_profile__v<N> (one row per customer and snapshot time: customer_id, as_of),
--          registered by workbench.features.register as the feature group customer_profile
--          (this file is a SELECT: register() validates it, writes the version and the registry rows)
-- reads:   stg_customers
-- params:  (none)
with snapshots as (
    select * from stg_customers
),

typed as (
    select
        trim(customer_id) as customer_id,
        try_cast(as_of as timestamp) as as_of,
        lower(trim(plan)) as plan,
        try_cast(tenure_months as integer) as tenure_months,
        try_cast(monthly_spend as double) as monthly_spend,
        source_line,
    from snapshots
),

-- a customer can have two snapshots on one day: the later line of the file wins
ranked as (
    select
        *,
        row_number() over (partition by customer_id, as_of order by source_line desc) as snapshot_rank,
    from typed
)

select
    customer_id,
    as_of,
    plan,
    tenure_months,
    monthly_spend,
from ranked
where snapshot_rank = 1
