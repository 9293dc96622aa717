-- creates: examples (one row per kept message: distinct text_norm, the earliest row wins)
-- reads:   int_messages
-- params:  (none)
create or replace table examples as
with passing as (
    select * from int_messages where filter_reason is null
),

earliest as (
    -- the row that wins each normalized text: the earliest created_at, ties to the smallest
    -- source_row_id (a struct compares field by field). An aggregate over three columns, not a
    -- window that sorts whole rows: a third of the CPU, on every thread.
    select min({'created_at': created_at, 'source_row_id': source_row_id}).source_row_id as example_id
    from passing
    group by text_norm
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
from passing
where source_row_id in (select example_id from earliest)
