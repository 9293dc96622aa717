-- creates: examples (one row per kept message: distinct text_norm, the earliest row wins)
-- reads:   int_messages
-- params:  (none)
create or replace table examples as
with passing as (
    select * from int_messages where filter_reason is null
),

ranked as (
    select
        *,
        row_number() over (partition by text_norm order by created_at, source_row_id) as dup_rank
    from passing
)

select
    source_row_id as example_id,
    message_id,
    customer_id,
    created_at,
    channel,
    region,
    age_band,
    text,
    text_norm,
    intent,
    reply
from ranked
where dup_rank = 1
