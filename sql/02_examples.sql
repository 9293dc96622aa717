-- creates: examples (one row per kept message: distinct text_norm, the earliest row wins)
-- reads:   int_messages
-- params:  (none)
-- int_messages is read twice rather than through a shared CTE: DuckDB materializes a CTE used
-- twice, which copies every passing row (and spills at scale).
create or replace table examples as
with earliest as (
    -- the row that wins each normalized text: the earliest created_at, ties to the smallest
    -- source_row_id (a struct compares field by field). A hash aggregate over three columns,
    -- not a window that sorts whole rows: half the CPU, on every thread.
    select arg_min(source_row_id, {'created_at': created_at, 'source_row_id': source_row_id}) as example_id
    from int_messages
    where filter_reason is null
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
from int_messages
where filter_reason is null and source_row_id in (select example_id from earliest)
