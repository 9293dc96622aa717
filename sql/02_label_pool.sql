-- creates: int_pool (one row per stg_pool row, with filter_reason),
--          label_pool (one row per distinct unlabeled message to annotate)
-- reads:   stg_pool
-- params:  {{min_chars}} {{max_chars}}
create or replace table int_pool as
with source as (
    select * from stg_pool
),

normalized as (
    select
        source_row_id,
        source_file,
        trim(message_id) as message_id,
        trim(customer_id) as customer_id,
        -- ISO 8601 local time only (YYYY-MM-DD[ HH:MM[:SS[.ffffff]]]), the formats on which DuckDB and Spark agree
        case
            when regexp_matches(trim(created_at), '^[0-9]{4}-[0-9]{2}-[0-9]{2}([ T]([01][0-9]|2[0-3]):[0-9]{2}(:[0-9]{2}([.][0-9]{1,6})?)?)?$')
                then try_cast(trim(created_at) as timestamp)
        end as created_at,
        lower(trim(channel)) as channel,
        lower(trim(region)) as region,
        trim(age_band) as age_band,
        trim(regexp_replace(nfc_normalize(coalesce(text, '')), '\s{2,}|[^\S ]', ' ', 'g')) as text_ws
    from source
),

masked as (
    select
        *,
        regexp_replace(
            regexp_replace(
                regexp_replace(text_ws, '[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}', '<EMAIL>', 'g'),
                '\b(?:\d[ -]?){12,18}\d\b', '<CARD>', 'g'),
            '(?:\+?\d{1,3}[ .-]?)?\(?\d{3}\)?[ .-]?\d{3}[ .-]?\d{4}\b', '<PHONE>', 'g') as text
    from normalized
)

select
    source_row_id,
    source_file,
    message_id,
    customer_id,
    created_at,
    channel,
    region,
    age_band,
    text,
    case
        when text = '' then 'empty text'
        when length(text) < {{min_chars}} then 'text shorter than ' || cast({{min_chars}} as varchar) || ' chars'
        when length(text) > {{max_chars}} then 'text longer than ' || cast({{max_chars}} as varchar) || ' chars'
    end as filter_reason,
    -- rank among rows of the same validity, so a filtered row never outranks a valid one
    row_number() over (partition by text = '' or length(text) < {{min_chars}} or length(text) > {{max_chars}}, lower(text)
                       order by created_at, source_row_id) as dup_rank
from masked;

create or replace table label_pool as
select
    source_row_id as item_id,
    message_id,
    customer_id,
    created_at,
    channel,
    region,
    age_band,
    text
from int_pool
where filter_reason is null and dup_rank = 1;
