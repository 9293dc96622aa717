-- creates: examples_with_features (one row per example: its columns, the customer's profile as it
--          was when the message was written, a prompt-ready customer_context sentence, and
--          text_with_context = that sentence, then the message: a model input that sees the profile)
-- reads:   examples, example_features (written by workbench.features.retrieve, point-in-time)
-- params:  (none)
create or replace table examples_with_features as
with base_examples as (
    select * from examples
),

pit_features as (
    select * from example_features
),

joined as (
    select
        e.*,
        f.plan,
        f.tenure_months,
        f.monthly_spend,
        f.customer_profile__event_time as profile_as_of,
    from base_examples as e
    left join pit_features as f using (example_id)
),

with_context as (
    select
        *,
        case
            when plan is null then 'Customer profile: unknown.'
            else printf('Customer plan: %s, tenure %s months.', plan, coalesce(cast(tenure_months as varchar), 'unknown'))
        end as customer_context,
    from joined
)

select
    *,
    customer_context || ' Message: ' || text as text_with_context,
from with_context
