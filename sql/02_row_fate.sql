-- creates: row_fate (one row per input row of every staged data set: kept, duplicate, rejected or filtered)
-- reads:   ingest_rejects, int_messages, examples, int_pool, int_kb_articles
-- params:  (none)
-- Contract: for each data set, count(*) = rows parsed into its stg_ table + its ingest_rejects rows.
create or replace table row_fate as
with rejects as (
    select
        case table_name
            when 'stg_messages' then 'messages'
            when 'stg_pool' then 'label_pool'
            when 'stg_kb_articles' then 'corpus'
        end as dataset,
        source_row_id,
        source_file,
        'rejected' as fate,
        reason
    from ingest_rejects
    where table_name in ('stg_messages', 'stg_pool', 'stg_kb_articles')
),

messages as (
    select
        'messages' as dataset,
        m.source_row_id,
        m.source_file,
        case
            when m.filter_reason is not null then 'filtered'
            when e.example_id is not null then 'kept'
            else 'duplicate'
        end as fate,
        case
            when m.filter_reason is not null then m.filter_reason
            when e.example_id is null then 'duplicate of ' || k.example_id
        end as reason
    from int_messages m
    left join examples e on e.example_id = m.source_row_id
    -- text_norm is unique in examples: at most one match, used only for duplicates. No other terms
    -- in this condition: with them DuckDB plans a nested-loop join (minutes at 1M rows).
    left join examples k on k.text_norm = m.text_norm
),

pool as (
    select
        'label_pool' as dataset,
        source_row_id,
        source_file,
        case when filter_reason is not null then 'filtered' when dup_rank = 1 then 'kept' else 'duplicate' end as fate,
        case when filter_reason is not null then filter_reason when dup_rank > 1 then 'duplicate text' end as reason
    from int_pool
),

corpus as (
    select
        'corpus' as dataset,
        source_row_id,
        source_file,
        case when filter_reason is not null then 'filtered' when dup_rank = 1 then 'kept' else 'duplicate' end as fate,
        case when filter_reason is not null then filter_reason when dup_rank > 1 then 'duplicate text' end as reason
    from int_kb_articles
)

select * from rejects
union all
select * from messages
union all
select * from pool
union all
select * from corpus
