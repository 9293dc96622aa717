-- creates: splits (appends one row per example not yet assigned; earlier assignments never move)
-- reads:   examples, splits
-- params:  {{train_fraction}} {{validation_fraction}} {{split_seed}} {{group_key}} {{stratify}}
--
-- A unit is an example, or a whole group when {{group_key}} names a column (customer_id, message_id,
-- channel, region, age_band). u = md5(seed || ':' || unit) read as a fraction in [0, 1) from its first
-- 8 hex digits (portable: the same on DuckDB and Spark, unlike hash()). Without stratification a unit's
-- split follows u; with it, units are ranked by u within their label and the first
-- floor(n * train + 0.5) go to train, the next ones to validation, so every label gets the requested
-- fractions to within one unit. A new example whose group was assigned before joins that group's split.
-- An example whose group column is null is a unit of its own (else it would never get a split).
-- Digits are cast to bigint before multiplying: 8 * 16^7 overflows a 32-bit int (Spark's ANSI mode raises).
insert into splits (example_id, split, seed, batch_id, assigned_at)
with examples_in as (
    select
        example_id,
        intent as label,
        coalesce(
            case {{group_key}}
                when 'customer_id' then customer_id
                when 'message_id' then message_id
                when 'channel' then channel
                when 'region' then region
                when 'age_band' then age_band
                else example_id
            end,
            'no group: ' || example_id
        ) as unit_key
    from examples
),

assigned as (
    select s.example_id, s.split, e.unit_key
    from splits s
    join examples_in e on e.example_id = s.example_id
),

new_examples as (
    select e.*
    from examples_in e
    left join splits s on s.example_id = e.example_id
    where s.example_id is null
),

known_groups as (
    -- groups that already have a split (only when a group key is set)
    select unit_key, min(split) as split
    from assigned
    where {{group_key}} <> ''
    group by unit_key
),

unit_labels as (
    -- a unit's label for stratification: its most common label (ties: the smallest). Without a
    -- group key a unit is one example: its own label (the count and window would cost a third of
    -- the split; {{group_key}} is a literal, so the branch not taken is pruned before it runs)
    select unit_key, label
    from new_examples
    where {{group_key}} = ''
    union all
    select unit_key, label
    from (
        select
            unit_key,
            label,
            row_number() over (partition by unit_key order by count(*) desc, label) as pick
        from new_examples
        where {{group_key}} <> ''
        group by unit_key, label
    ) counted
    where pick = 1
),

hashed as (
    select
        u.unit_key,
        case when {{stratify}} then u.label else '' end as stratum,
        md5(cast({{split_seed}} as varchar) || ':' || u.unit_key) as h
    from unit_labels u
    left join known_groups k on k.unit_key = u.unit_key
    where k.unit_key is null
),

fractions as (
    -- u only where the split follows it (no stratification): a literal {{stratify}} prunes it otherwise
    select
        unit_key,
        stratum,
        substr(h, 1, 8) as h8,
        (
            (cast(strpos('0123456789abcdef', substr(h, 1, 1)) as bigint) - 1) * 268435456
            + (cast(strpos('0123456789abcdef', substr(h, 2, 1)) as bigint) - 1) * 16777216
            + (cast(strpos('0123456789abcdef', substr(h, 3, 1)) as bigint) - 1) * 1048576
            + (cast(strpos('0123456789abcdef', substr(h, 4, 1)) as bigint) - 1) * 65536
            + (cast(strpos('0123456789abcdef', substr(h, 5, 1)) as bigint) - 1) * 4096
            + (cast(strpos('0123456789abcdef', substr(h, 6, 1)) as bigint) - 1) * 256
            + (cast(strpos('0123456789abcdef', substr(h, 7, 1)) as bigint) - 1) * 16
            + (cast(strpos('0123456789abcdef', substr(h, 8, 1)) as bigint) - 1)
        ) / cast(4294967296 as double) as u  -- double on both engines (Spark: decimal)
    from hashed
),

ranked as (
    -- ranked by the first 8 hex digits as text: the same order as by u (fixed-length lowercase hex)
    -- without computing u
    select
        unit_key,
        u,
        row_number() over (partition by stratum order by h8, unit_key) as r,
        count(*) over (partition by stratum) as n
    from fractions
),

unit_splits as (
    select
        unit_key,
        case
            when {{stratify}} then
                case
                    when r <= floor(n * {{train_fraction}} + 0.5) then 'train'
                    when r <= floor(n * ({{train_fraction}} + {{validation_fraction}}) + 0.5) then 'validation'
                    else 'test'
                end
            when u < {{train_fraction}} then 'train'
            when u < {{train_fraction}} + {{validation_fraction}} then 'validation'
            else 'test'
        end as split
    from ranked
    union all
    select unit_key, split from known_groups
),

batch as (
    select coalesce(max(batch_id), 0) + 1 as batch_id from splits
)

select
    n.example_id,
    s.split,
    {{split_seed}} as seed,
    b.batch_id,
    current_timestamp as assigned_at
from new_examples n
join unit_splits s on s.unit_key = n.unit_key
cross join batch b
where {{group_key}} <> ''
union all
-- without a group key a unit is one new example (its unit_key is its example_id): no join back
select
    s.unit_key as example_id,
    s.split,
    {{split_seed}} as seed,
    b.batch_id,
    current_timestamp as assigned_at
from unit_splits s
cross join batch b
where {{group_key}} = ''
