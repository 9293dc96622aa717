-- creates: int_kb_articles (one row per stg_kb_articles row, with filter_reason),
--          corpus_documents (one row per usable article, distinct doc_id and text)
-- reads:   stg_kb_articles
-- params:  {{min_chars}}
create or replace table int_kb_articles as
with source as (
    select * from stg_kb_articles
),

normalized as (
    select
        source_row_id,
        source_file,
        trim(doc_id) as doc_id,
        trim(published_at) as published_at_raw,
        -- ISO 8601 local time only (YYYY-MM-DD[ HH:MM[:SS[.ffffff]]]), the formats on which DuckDB and Spark agree
        case
            when regexp_matches(trim(published_at), '^[0-9]{4}-[0-9]{2}-[0-9]{2}([ T]([01][0-9]|2[0-3]):[0-9]{2}(:[0-9]{2}([.][0-9]{1,6})?)?)?$')
                then try_cast(trim(published_at) as timestamp)
        end as published_at,
        trim(coalesce(topic, '')) as topic,
        trim(regexp_replace(nfc_normalize(coalesce(title, '')), '\s{2,}|[^\S ]', ' ', 'g')) as title,
        trim(regexp_replace(nfc_normalize(coalesce(body, '')), '\s{2,}|[^\S ]', ' ', 'g')) as text
    from source
),

checked as (
    select
        *,
        case
            when text = '' then 'empty body'
            when length(text) < {{min_chars}} then 'body shorter than ' || cast({{min_chars}} as varchar) || ' chars'
            when doc_id = '' then 'missing doc_id'
            when published_at is null then 'unparseable published_at: ' || coalesce(published_at_raw, 'null')
        end as filter_reason
    from normalized
)

select
    source_row_id,
    source_file,
    doc_id,
    published_at,
    topic,
    title,
    text,
    filter_reason,
    -- rank among rows of the same validity, so a filtered row never outranks a valid one
    row_number() over (partition by filter_reason is null, lower(text) order by published_at, source_row_id) as dup_rank
from checked;

create or replace table corpus_documents as
select doc_id, published_at, topic, title, text
from int_kb_articles
where filter_reason is null and dup_rank = 1;
